//! Session recordings, sealed to the auditors' keys before they touch disk.
//!
//! Every shell, exec and sftp channel run through gatehouse is one
//! recording. The gateway holds only the auditors' *public* keys
//! (`[recordings] recipients`: age X25519 `age1...` and `ssh-ed25519` keys),
//! so nothing on the gateway can read a recording once it is written, and an
//! auditor decrypts with the stock `age -d -i KEY` as well as with
//! `gatehouse recordings`. If a recording cannot be created the channel is
//! refused; if writing fails mid-session the session ends (fail closed).
//!
//! # On disk
//!
//! ```text
//! <dir>/<id>/                       0700; id = 20240501T120000Z-0123456789 (UTC start + random)
//!   meta.json                       plaintext: who, what kind, when, how it ended (no content, no command, no env)
//!   manifest.jsonl                  plaintext: one line per sealed segment {seq, file, size, sha256, chain}
//!   000000.age 000001.age ...       sealed segments: each a complete age file to every recipient
//!   .000002.age.tmp                 the open segment (only while being written; lost on kill -9)
//! ```
//!
//! A segment is sealed at least every 5 s while there is activity and when
//! its plaintext reaches 4 MiB; sealing is: finish the age stream, fsync,
//! rename into place, fsync the directory, append + fsync the manifest line.
//! Segment 0 (the header alone) is sealed before the channel is allowed to
//! run, so a `kill -9` loses at most the open segment.
//!
//! **Hash chain.** `chain[n] = SHA-256("gatehouse-recording-chain/1\0" || id
//! || 0 || n as u64 BE || chain[n-1] || SHA-256(file n))`, with `chain[-1] =
//! SHA-256("gatehouse-recording-genesis/2\0" || id || 0 || M)` where `M` is
//! [`format::meta_sha256`] of `meta.json` without its `end` (format 3; it is
//! also in segment 0's manifest entry, every sealed header and the
//! `recording.started` event, so an edited who/what/when/where breaks the
//! chain and is named as `meta.json`). Formats 1 and 2 used
//! `SHA-256("gatehouse-recording-genesis/1\0" || id)` and still verify,
//! with a note that their metadata is not covered. `chain[n-1]` is also
//! inside segment n's sealed plaintext (`prev_chain`), `chain[n]` is in the
//! manifest and in a `recording.segment` audit event, and the final chain
//! and segment count are in `meta.json` and a `recording.finished` event.
//! `gatehouse recordings verify` (no key) recomputes all of it and names the
//! segment that is missing, reordered, truncated, altered or replaced;
//! `--audit FILE` also checks the chain against the audit log, which a
//! compromised gateway cannot rewrite once it has been shipped. (The chain
//! holds no secret — the gateway has none — so someone with root on the
//! gateway could rewrite a recording and its manifest consistently; the
//! shipped audit log is what catches that.)
//!
//! **Plaintext of a segment.** JSON lines. The first is an asciicast v2
//! header (width, height, timestamp, env.TERM) with gatehouse's metadata
//! under `gatehouse` (recording and session id, user, login, target, source,
//! WireGuard peer, kind, exec command, segment number, prev_chain). Then
//! events `[seconds, code, data]`, seconds since the recording started:
//! `o`/`e`/`i` output/stderr/input as UTF-8 text, `ob`/`eb`/`ib` the same as
//! base64 when the bytes are not tidy text (binary output is lossless), `r`
//! resize `"COLSxROWS"`, `sftp` an operation object, `x` exit status, `end`
//! how it ended. A database session (`kind = "postgres"`) is a recording
//! like any other, with a query log instead of a terminal: its header
//! names the database, and its events are statements, bind parameters,
//! results, COPY byte counts, cancels and notices ([`query`], fed through
//! [`Recording::db`]); result rows are never recorded. A decrypted segment is thus itself an asciicast file
//! (`asciinema cat` prints its text output). Which input is recorded follows
//! the role's `record_input` ([`RecordingMeta::stores_input`]): by default
//! (`"exec"`) the stdin of exec channels without a PTY, never keystrokes in
//! a PTY unless `"all"`; sftp channels record operations parsed from the
//! protocol (see [`sftp`]), never file contents. The header also holds the
//! exact exec command (`command`, plus `command_base64` when it is not
//! UTF-8) and the environment variables the role let through (`env`, names
//! and values).
//!
//! **Reading a hostile directory.** The auditor's tools open only regular
//! files, never follow a symlink (`O_NOFOLLOW`), never wait on a FIFO
//! (`O_NONBLOCK`), and read no file further than its bound (the manifest's
//! sizes; fixed caps for `meta.json` and the manifest). Anything else is
//! reported as damage by name; `verify` goes on to the next recording.
//!
//! **Audit events** (emitted here, not by the caller): `recording.started`
//! (recording id, session id, user, login, target, source, kind,
//! meta_sha256, record_input mode, input_recorded, and the *names* of the
//! environment variables passed on), `recording.segment`
//! (seq, sha256, chain) for every sealed segment, `recording.finished`
//! (segments, final chain, reason), `recording.failed` (a recording could not
//! be created, or writing failed mid-session), `recording.removed`
//! (retention).
//!
//! **Backpressure.** Between a [`Recording`] and its writer task is a queue
//! of 32 chunks of at most 32 KiB; the writer encrypts and writes on the
//! blocking pool. A slow disk makes the `Recording` methods wait, which
//! slows the session; memory stays bounded and nothing is dropped.
//! Database events ([`Recording::db`]), whose size the client chooses, also
//! wait for room in a budget of 1 MiB of queued event bytes (one larger
//! event waits until it is alone), and one event holds at most
//! [`query::MAX_EVENT_BYTES`]: a client pipelining thousands of
//! statements is slowed to the disk's pace.
//! `GATEHOUSE_TEST_RECORDER_THROTTLE_BPS` (test-only) limits the writer to
//! that many bytes per second to prove it.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod cli;
pub mod export;
pub mod format;
pub mod query;
pub mod reader;
mod retention;
mod segment;
pub mod sftp;
pub mod transcript;
pub mod verify;
mod writer;

use std::collections::HashSet;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::audit;
use crate::config::RecordInput;
use format::{Kind, Meta, SegmentInfo};
use segment::{Recipients, SegmentStore};

pub use query::{CopyDirection, DbEvent, Param};
pub use writer::Recording;

/// Test-only: limit every recording writer to this many bytes per second.
pub const THROTTLE_ENV: &str = "GATEHOUSE_TEST_RECORDER_THROTTLE_BPS";

/// Why recording is not possible. `Display` is what the user is told (no
/// paths, keys or content); [`RecordingError::detail`] is for operators and
/// the audit log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordingError {
    /// Startup: the directory or the recipients cannot be used (operator-facing).
    #[error("{0}")]
    Setup(String),
    #[error("sessions cannot be recorded right now (the recordings directory is not writable); nothing was run")]
    Unwritable { detail: String },
    #[error(
        "sessions cannot be recorded right now (the recordings disk is full); nothing was run"
    )]
    DiskFull { detail: String },
    #[error("sessions cannot be recorded right now (sealing to the auditors' keys failed); nothing was run")]
    Seal { detail: String },
    #[error("the session recording failed (disk full or I/O error), and the session cannot continue unrecorded")]
    Failed { detail: String },
    #[error("the session recording has already ended")]
    Closed,
    /// One event is over [`query::MAX_EVENT_BYTES`]: it is not recorded,
    /// and what it describes must not run. The recording itself goes on.
    #[error("the statement is too large to be recorded (over 16 MiB); it was not run")]
    TooLarge { detail: String },
}

impl RecordingError {
    /// The cause, with paths and OS errors, for logs and audit events.
    pub fn detail(&self) -> String {
        match self {
            RecordingError::Setup(d)
            | RecordingError::Unwritable { detail: d }
            | RecordingError::DiskFull { detail: d }
            | RecordingError::Seal { detail: d }
            | RecordingError::Failed { detail: d }
            | RecordingError::TooLarge { detail: d } => d.clone(),
            RecordingError::Closed => "recording already ended".into(),
        }
    }
}

/// What a channel runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordingKind {
    /// A shell with a PTY (`term`, `cols`, `rows` from the pty-request).
    Shell { term: String, cols: u32, rows: u32 },
    /// `ssh host command`, scp -O, rsync: the command's exact bytes.
    Exec { command: Vec<u8> },
    /// The sftp subsystem (also modern scp).
    Sftp,
    /// A PostgreSQL session: a query log fed by [`Recording::db`]. The
    /// database name is only in the sealed header (with the statements),
    /// not in `meta.json`.
    Postgres { database: String },
    /// A MySQL/MariaDB session (`database`: the schema named at login,
    /// empty when none), recorded like PostgreSQL's.
    Mysql { database: String },
}

impl RecordingKind {
    /// Whether this is a database session (a query log, no raw bytes).
    pub fn is_database(&self) -> bool {
        matches!(
            self,
            RecordingKind::Postgres { .. } | RecordingKind::Mysql { .. }
        )
    }
}

/// Who and what a recording is of. All of it except the exec command and
/// the environment is written in plaintext metadata (what `list` shows
/// without a key); those two are only in the sealed segments.
#[derive(Debug, Clone)]
pub struct RecordingMeta {
    pub session_id: String,
    pub user: String,
    pub login: String,
    pub target: String,
    pub source: String,
    pub wireguard_peer: Option<String>,
    pub kind: RecordingKind,
    /// The role's `record_input` (see [`RecordInput`]).
    pub record_input: RecordInput,
    /// Whether the channel has a PTY: an exec with a PTY (`ssh -t host
    /// cmd`) gets keystrokes as input, so `"exec"` does not record them.
    pub pty: bool,
    /// Environment variables the role allowed and that reached the target
    /// on this channel, in order: their names and values go into the sealed
    /// header, their names into the `recording.started` audit event.
    pub env: Vec<(String, String)>,
}

impl RecordingMeta {
    /// Whether this channel's input is stored: everything under `"all"`;
    /// under `"exec"` only a channel without a PTY (its stdin is data such
    /// as a script or an upload, not keystrokes): an exec, or a shell
    /// without a PTY, which is how `ssh host < script.sh` runs a script;
    /// nothing under `"none"`. SFTP channels record operations whatever
    /// this says, never file contents; database sessions record their
    /// statements ([`Recording::db`]) whatever this says, never raw bytes.
    pub fn stores_input(&self) -> bool {
        if self.kind.is_database() {
            return false;
        }
        match self.record_input {
            RecordInput::All => !matches!(self.kind, RecordingKind::Sftp),
            RecordInput::Exec => !self.pty && !matches!(self.kind, RecordingKind::Sftp),
            RecordInput::None => false,
        }
    }
}

pub(crate) struct RecorderInner {
    dir: PathBuf,
    recipients: Arc<Recipients>,
    retention: Duration,
    min_free: u64,
    throttle_bps: Mutex<Option<u64>>,
    /// How long a segment stays open while there is activity (5 s; tests shorten it).
    segment_interval: Mutex<Duration>,
    /// Recordings being written (retention skips them).
    active: Mutex<HashSet<String>>,
    idle: tokio::sync::Notify,
}

impl RecorderInner {
    fn throttle(&self) -> Option<u64> {
        self.throttle_bps.lock().ok().and_then(|t| *t)
    }
    fn segment_interval(&self) -> Duration {
        self.segment_interval
            .lock()
            .map(|d| *d)
            .unwrap_or(writer::SEGMENT_INTERVAL)
    }
    pub(crate) fn finished(&self, id: &str) {
        if let Ok(mut a) = self.active.lock() {
            a.remove(id);
            if a.is_empty() {
                self.idle.notify_waiters();
            }
        }
    }
    fn is_active(&self, id: &str) -> bool {
        self.active.lock().map(|a| a.contains(id)).unwrap_or(true)
    }
    fn active_count(&self) -> usize {
        self.active.lock().map(|a| a.len()).unwrap_or(0)
    }
}

/// The daemon's recorder: one per daemon, shared in an `Arc`.
pub struct Recorder {
    inner: Arc<RecorderInner>,
}

impl Recorder {
    /// Checks that the recipients parse and that the directory exists (it is
    /// created 0700 if not) and is writable. The daemon refuses to start on Err.
    pub fn new(settings: &crate::config::RecordingSettings) -> Result<Recorder, RecordingError> {
        let recipients = Recipients::parse(&settings.recipients)
            .map_err(|e| RecordingError::Setup(format!("[recordings] recipients: {e}")))?;
        let dir = settings.dir.clone();
        let show = dir.display();
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| {
                    RecordingError::Setup(format!("cannot create recordings directory {show}: {e}"))
                })?;
        }
        if !dir.is_dir() {
            return Err(RecordingError::Setup(format!(
                "recordings directory {show} is not a directory"
            )));
        }
        probe_writable(&dir).map_err(|e| {
            RecordingError::Setup(format!("recordings directory {show} is not writable: {e}"))
        })?;
        let throttle = std::env::var(THROTTLE_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|v| *v > 0);
        if let Some(bps) = throttle {
            tracing::warn!(
                bytes_per_second = bps,
                "{THROTTLE_ENV} is set: recording writes are throttled (test-only)"
            );
        }
        Ok(Recorder {
            inner: Arc::new(RecorderInner {
                dir,
                recipients: Arc::new(recipients),
                retention: settings.retention,
                min_free: settings.min_free_bytes,
                throttle_bps: Mutex::new(throttle),
                segment_interval: Mutex::new(writer::SEGMENT_INTERVAL),
                active: Mutex::new(HashSet::new()),
                idle: tokio::sync::Notify::new(),
            }),
        })
    }

    /// Test hook: throttle writers to `bps` bytes per second (None: off).
    #[doc(hidden)]
    pub fn set_throttle_for_tests(&self, bps: Option<u64>) {
        if let Ok(mut t) = self.inner.throttle_bps.lock() {
            *t = bps;
        }
    }

    /// Test hook: seal segments after this much activity instead of 5 s.
    #[doc(hidden)]
    pub fn set_segment_interval_for_tests(&self, d: Duration) {
        if let Ok(mut i) = self.inner.segment_interval.lock() {
            *i = d;
        }
    }

    /// The recordings directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Starts a recording: fails closed (Err) when the directory cannot be
    /// written, free space is below `min_free`, or sealing fails. Before it
    /// returns, the recording's directory, metadata and sealed segment 0
    /// exist on disk and `recording.started` + `recording.segment` are
    /// audited; on Err a `recording.failed` event is audited. The blocking
    /// file work runs on the blocking pool. Must be called inside a Tokio
    /// runtime (the writer is a task).
    pub async fn start(&self, meta: RecordingMeta) -> Result<Recording, RecordingError> {
        let id = new_id();
        let inner = self.inner.clone();
        let (id2, meta2) = (id.clone(), meta.clone());
        let created =
            tokio::task::spawn_blocking(move || create_recording(&inner, &id2, &meta2)).await;
        let created = match created {
            Ok(r) => r,
            Err(e) => Err(RecordingError::Seal {
                detail: format!("recording setup task failed: {e}"),
            }),
        };
        match created {
            Ok((store, disk_meta, sealed)) => {
                let meta_sha256 = hex::encode(format::meta_sha256(&disk_meta));
                let env_names: Vec<&str> = meta.env.iter().map(|(n, _)| n.as_str()).collect();
                audit::recording_started(&audit::RecordingStarted {
                    recording_id: &id,
                    session_id: &meta.session_id,
                    user: &meta.user,
                    login: &meta.login,
                    target: &meta.target,
                    source: &meta.source,
                    kind: disk_meta.kind.as_str(),
                    meta_sha256: &meta_sha256,
                    record_input: meta.record_input.as_str(),
                    input_recorded: meta.stores_input(),
                    env: &env_names.join(","),
                });
                audit::recording_segment(
                    &id,
                    &meta.session_id,
                    sealed.seq,
                    &sealed.sha256,
                    &sealed.chain,
                );
                if let Ok(mut a) = self.inner.active.lock() {
                    a.insert(id.clone());
                }
                Ok(writer::spawn(self.inner.clone(), store, disk_meta, &meta))
            }
            Err(e) => {
                audit::recording_failed(
                    &id,
                    &meta.session_id,
                    &meta.user,
                    &meta.target,
                    &e.detail(),
                );
                tracing::warn!(recording_id = %id, error = %e.detail(), "cannot start a recording");
                Err(e)
            }
        }
    }

    /// Background task: removes recordings older than `retention` (each
    /// removal audited), at start and every hour; stops when `shutdown`
    /// becomes true. Recordings being written are never removed.
    pub fn spawn_retention(self: Arc<Self>, shutdown: tokio::sync::watch::Receiver<bool>) {
        retention::spawn(self.inner.clone(), shutdown);
    }

    /// Waits (at most `grace`) until every recording has been finished or
    /// aborted and sealed; call on shutdown after sessions were told to end.
    /// Returns whether all were done.
    pub async fn drain(&self, grace: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.inner.active_count() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(grace, wait).await.is_ok()
    }

    /// Number of recordings being written.
    pub fn active(&self) -> usize {
        self.inner.active_count()
    }
}

/// Creates and removes a probe file in `dir`.
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".probe-{}", new_id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// Free bytes for unprivileged users on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// A new recording id: UTC start (sortable) and 40 random bits.
fn new_id() -> String {
    let mut b = [0u8; 5];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let ts: String = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    format!("{ts}-{}", hex::encode(b))
}

/// The blocking part of [`Recorder::start`].
fn create_recording(
    inner: &RecorderInner,
    id: &str,
    meta: &RecordingMeta,
) -> Result<(SegmentStore, Meta, segment::Sealed), RecordingError> {
    let unwritable = |what: &str, e: std::io::Error| RecordingError::Unwritable {
        detail: format!("{what} in {}: {e}", inner.dir.display()),
    };
    // Unwritable first (the more precise reason), then free space.
    let dir = inner.dir.join(id);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| unwritable("cannot create a recording", e))?;
    let free = free_bytes(&inner.dir);
    let low = match free {
        Ok(free) if free < inner.min_free => Some(RecordingError::DiskFull {
            detail: format!(
                "{} has {free} bytes free, below min_free ({} bytes)",
                inner.dir.display(),
                inner.min_free
            ),
        }),
        Ok(_) => None,
        Err(e) => Some(unwritable("cannot check free space", e)),
    };
    if let Some(e) = low {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    let result = fill_recording(inner, id, meta, &dir);
    if result.is_err() {
        // The channel never ran: leave nothing half-made behind.
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn fill_recording(
    inner: &RecorderInner,
    id: &str,
    meta: &RecordingMeta,
    dir: &Path,
) -> Result<(SegmentStore, Meta, segment::Sealed), RecordingError> {
    let classify = |what: &str, e: std::io::Error| {
        let detail = format!("{what} in {}: {e}", dir.display());
        if e.kind() == std::io::ErrorKind::StorageFull {
            RecordingError::DiskFull { detail }
        } else {
            RecordingError::Unwritable { detail }
        }
    };
    let now = SystemTime::now();
    let started_ms = format::unix_ms(now);
    let (kind, command, term, cols, rows) = match &meta.kind {
        RecordingKind::Shell { term, cols, rows } if *cols > 0 && *rows > 0 => {
            (Kind::Shell, None, Some(term.clone()), *cols, *rows)
        }
        RecordingKind::Shell { term, .. } => (Kind::Shell, None, Some(term.clone()), 80, 24),
        RecordingKind::Exec { command } => (Kind::Exec, Some(command.as_slice()), None, 80, 24),
        RecordingKind::Sftp => (Kind::Sftp, None, None, 80, 24),
        // No terminal: the asciicast header still needs a size.
        RecordingKind::Postgres { .. } => (Kind::Postgres, None, None, 80, 24),
        RecordingKind::Mysql { .. } => (Kind::Mysql, None, None, 80, 24),
    };
    let database = match &meta.kind {
        RecordingKind::Postgres { database } | RecordingKind::Mysql { database } => {
            Some(database.clone())
        }
        _ => None,
    };
    let term = term.filter(|t| !t.is_empty());
    let disk_meta = Meta {
        format: format::FORMAT.into(),
        id: id.into(),
        session_id: meta.session_id.clone(),
        user: meta.user.clone(),
        login: meta.login.clone(),
        target: meta.target.clone(),
        source: meta.source.clone(),
        wireguard_peer: meta.wireguard_peer.clone(),
        kind,
        started: format::rfc3339_ms(started_ms),
        started_unix_ms: started_ms,
        recipients: inner.recipients.lines.clone(),
        end: None,
    };
    let json = serde_json::to_vec_pretty(&disk_meta).map_err(|e| RecordingError::Seal {
        detail: format!("cannot encode metadata: {e}"),
    })?;
    segment::write_atomic(dir, format::META_FILE, &json)
        .map_err(|e| classify("cannot write metadata", e))?;
    // Bound into the chain's genesis, segment 0's manifest entry, every
    // sealed header and the recording.started event.
    let meta_sha256 = hex::encode(format::meta_sha256(&disk_meta));
    let (command_text, command_base64) = match command {
        Some(c) => match std::str::from_utf8(c) {
            Ok(t) => (Some(t.to_string()), None),
            Err(_) => (
                Some(String::from_utf8_lossy(c).into_owned()),
                Some(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    c,
                )),
            ),
        },
        None => (None, None),
    };
    let info = SegmentInfo {
        format: format::FORMAT.into(),
        recording_id: id.into(),
        session_id: meta.session_id.clone(),
        user: meta.user.clone(),
        login: meta.login.clone(),
        target: meta.target.clone(),
        source: meta.source.clone(),
        wireguard_peer: meta.wireguard_peer.clone(),
        kind,
        command: command_text,
        command_base64,
        database,
        record_input: meta.stores_input(),
        record_input_mode: Some(meta.record_input.as_str().into()),
        pty: meta.pty,
        env: meta.env.clone(),
        meta_sha256: Some(meta_sha256),
        segment: 0,
        prev_chain: String::new(),
    };
    let mut store = SegmentStore::create(
        dir.to_path_buf(),
        inner.recipients.clone(),
        info,
        started_ms / 1000,
        term,
    )
    .map_err(|e| classify("cannot create the manifest", e))?;
    store
        .write(b"", cols, rows)
        .map_err(|e| seal_or_io("cannot open segment 0", e, dir))?;
    let sealed = store
        .seal()
        .map_err(|e| classify("cannot seal segment 0", e))?
        .ok_or_else(|| RecordingError::Seal {
            detail: "segment 0 was not sealed".into(),
        })?;
    Ok((store, disk_meta, sealed))
}

fn seal_or_io(what: &str, e: std::io::Error, dir: &Path) -> RecordingError {
    let detail = format!("{what} in {}: {e}", dir.display());
    match e.kind() {
        std::io::ErrorKind::Other => RecordingError::Seal { detail },
        std::io::ErrorKind::StorageFull => RecordingError::DiskFull { detail },
        _ => RecordingError::Unwritable { detail },
    }
}

#[cfg(test)]
mod tests;
