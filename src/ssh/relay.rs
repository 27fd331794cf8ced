//! The relay between a user's channel (server side) and the target's channel
//! (client side), plus per-session accounting and limits.
//!
//! Flow control: user -> target data is written with the target channel's
//! window (`data_bytes` waits for window), which holds up the user's session
//! loop and so russh's bounded channel queue — a slow target slows the user.
//! Target -> user data goes through the server `Handle`, whose bounded queue
//! russh stops draining while the user's window is exhausted — a slow reader
//! slows the target. Nothing between them grows without bound.
//!
//! Ending: a limit or a shutdown ends the session within a second, however
//! full those queues are. The closing message is best-effort (it waits in
//! the same queue as unread output, so it gets [`GOODBYE_TIMEOUT`]); then the
//! session's [`Ending`] is killed: stdin stops being forwarded at the
//! decision, the target connection and the jump's stream are cut.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use russh::server::Handle;
use russh::{client, Channel, ChannelId, ChannelMsg, ChannelWriteHalf, Pty, Sig};
use tokio::sync::mpsc;

use super::ending::Ending;
use crate::audit;
use crate::live::{Live, Registration};
use crate::recording::{Recorder, Recording, RecordingError, RecordingMeta};

/// How long to wait for a target to answer a channel request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the polite end (message, EOF, close, disconnect) may take before
/// the session is cut regardless.
pub const GOODBYE_TIMEOUT: Duration = Duration::from_millis(500);

/// Counters of one relayed session (one login to one target).
#[derive(Debug)]
pub struct Stats {
    start: Instant,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    last_activity_ms: AtomicU64,
    exit_status: Mutex<Option<u32>>,
    end_reason: Mutex<Option<String>>,
    channels: Mutex<Vec<ChannelId>>,
    /// Ends the session at once (limits, shutdown); see [`Ending`].
    pub ending: Ending,
    /// The session's entry in the live registry (set when it starts).
    live: std::sync::OnceLock<Arc<Live>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            start: Instant::now(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            exit_status: Mutex::new(None),
            end_reason: Mutex::new(None),
            channels: Mutex::new(Vec::new()),
            ending: Ending::new(),
            live: std::sync::OnceLock::new(),
        }
    }
}

impl Stats {
    /// Counters whose session is ended through `ending` (shared with, say,
    /// the stream of the user's connection, so that a limit can cut it).
    pub fn with_ending(ending: Ending) -> Stats {
        Stats {
            ending,
            ..Stats::default()
        }
    }

    /// Output of a terminal channel, for live watchers.
    fn tap(&self, tapped: &std::sync::atomic::AtomicBool, data: &[u8]) {
        if tapped.load(Ordering::Relaxed) {
            if let Some(l) = self.live.get() {
                l.tap(data);
            }
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }
    pub fn add_up(&self, n: usize) {
        self.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
        if let Some(l) = self.live.get() {
            l.add_up(n);
        }
    }
    pub fn add_down(&self, n: usize) {
        self.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
        if let Some(l) = self.live.get() {
            l.add_down(n);
        }
    }
    /// Links these counters to the session's live entry.
    pub fn set_live(&self, live: Arc<Live>) {
        let _ = self.live.set(live);
    }
    /// The session's live entry, once it started.
    pub fn live(&self) -> Option<&Arc<Live>> {
        self.live.get()
    }
    fn last_activity(&self) -> Instant {
        self.start + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }
    /// Records why the session ended (the first reason wins).
    pub fn set_end_reason(&self, reason: &str) {
        if let Ok(mut r) = self.end_reason.lock() {
            if r.is_none() {
                *r = Some(reason.to_string());
            }
        }
    }
    fn end_reason(&self) -> Option<String> {
        self.end_reason.lock().ok().and_then(|r| r.clone())
    }
    fn set_exit_status(&self, s: u32) {
        if let Ok(mut e) = self.exit_status.lock() {
            *e = Some(s);
        }
    }
    pub fn add_channel(&self, id: ChannelId) {
        if let Ok(mut c) = self.channels.lock() {
            c.push(id);
        }
    }
    fn channels(&self) -> Vec<ChannelId> {
        self.channels.lock().map(|c| c.clone()).unwrap_or_default()
    }
    /// The summary for the audit log.
    pub fn summary(&self) -> audit::SessionSummary {
        audit::SessionSummary {
            duration_ms: self.start.elapsed().as_millis() as u64,
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            exit_status: self.exit_status.lock().ok().and_then(|e| *e),
            reason: self
                .end_reason
                .lock()
                .ok()
                .and_then(|r| r.clone())
                .unwrap_or_else(|| "closed".into()),
        }
    }
}

/// One user channel bridged to one target channel.
pub struct Bridge {
    id: ChannelId,
    up: ChannelWriteHalf<client::Msg>,
    replies: mpsc::Receiver<bool>,
    stats: Arc<Stats>,
    user: Handle,
    /// Set (before anything runs on the target) by [`Bridge::begin_recording`];
    /// the pump records output into it and finishes it when the channel ends.
    rec: Arc<tokio::sync::OnceCell<Recording>>,
    /// The pty the user asked for: (term, cols, rows).
    pty: Option<(String, u32, u32)>,
    up_bytes: Arc<AtomicU64>,
    /// Set when the pump ended: the target channel is gone and the user's
    /// channel was closed (russh calls no handler when the client then
    /// confirms the close, so this is how the channel is known to be over).
    finished: Arc<std::sync::atomic::AtomicBool>,
    /// Whether this channel's output goes to live watchers: terminal
    /// channels (shell, exec), never sftp's binary packets.
    tapped: Arc<std::sync::atomic::AtomicBool>,
}

/// Tells the user the recording failed and ends their channel: a session
/// never continues unrecorded.
async fn recording_failed(user: &Handle, id: ChannelId, stats: &Stats, e: &RecordingError) {
    tracing::error!(error = %e.detail(), "recording failed mid-session; ending the channel");
    stats.set_end_reason("recording failed");
    let text = format!("\r\ngatehouse: {e}; closing.\r\n");
    let _ = user
        .extended_data(id, 1, Bytes::from(text.into_bytes()))
        .await;
    let _ = user.eof(id).await;
    let _ = user.close(id).await;
}

impl Bridge {
    /// Starts relaying the target channel's output to the user's channel `id`.
    pub fn start(
        id: ChannelId,
        target: Channel<client::Msg>,
        user: Handle,
        stats: Arc<Stats>,
    ) -> Bridge {
        let (read, up) = target.split();
        let (reply_tx, replies) = mpsc::channel(8);
        stats.add_channel(id);
        let pump_stats = stats.clone();
        let rec: Arc<tokio::sync::OnceCell<Recording>> = Arc::new(tokio::sync::OnceCell::new());
        let up_bytes = Arc::new(AtomicU64::new(0));
        let (pump_rec, pump_up) = (rec.clone(), up_bytes.clone());
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pump_finished = finished.clone();
        let tapped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pump_tapped = tapped.clone();
        let bridge_user = user.clone();
        tokio::spawn(async move {
            let mut read = read;
            let mut exit: Option<u32> = None;
            let mut down: u64 = 0;
            let mut reason = "closed";
            loop {
                let Some(msg) = read.wait().await else {
                    let _ = user.close(id).await;
                    break;
                };
                let ok = match msg {
                    ChannelMsg::Data { data } => {
                        pump_stats.add_down(data.len());
                        down += data.len() as u64;
                        // Recorded before the user sees it: nothing reaches
                        // the user that is not in the recording.
                        if let Some(r) = pump_rec.get() {
                            if let Err(e) = r.output(data.clone()).await {
                                recording_failed(&user, id, &pump_stats, &e).await;
                                reason = "recording failed";
                                break;
                            }
                            pump_stats.tap(&pump_tapped, &data);
                        }
                        user.data(id, data).await.is_ok()
                    }
                    ChannelMsg::ExtendedData { data, ext } => {
                        pump_stats.add_down(data.len());
                        down += data.len() as u64;
                        if let Some(r) = pump_rec.get() {
                            if let Err(e) = r.stderr(data.clone()).await {
                                recording_failed(&user, id, &pump_stats, &e).await;
                                reason = "recording failed";
                                break;
                            }
                            pump_stats.tap(&pump_tapped, &data);
                        }
                        user.extended_data(id, ext, data).await.is_ok()
                    }
                    ChannelMsg::Eof => user.eof(id).await.is_ok(),
                    ChannelMsg::ExitStatus { exit_status } => {
                        pump_stats.set_exit_status(exit_status);
                        exit = Some(exit_status);
                        user.exit_status_request(id, exit_status).await.is_ok()
                    }
                    ChannelMsg::ExitSignal {
                        signal_name,
                        core_dumped,
                        error_message,
                        lang_tag,
                    } => user
                        .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                        .await
                        .is_ok(),
                    ChannelMsg::Success => {
                        let _ = reply_tx.try_send(true);
                        true
                    }
                    ChannelMsg::Failure => {
                        let _ = reply_tx.try_send(false);
                        true
                    }
                    ChannelMsg::Close => {
                        let _ = user.close(id).await;
                        false
                    }
                    _ => true,
                };
                if !ok {
                    break;
                }
            }
            if let Some(r) = pump_rec.get() {
                let reason = pump_stats
                    .end_reason()
                    .unwrap_or_else(|| reason.to_string());
                let up = pump_up.load(Ordering::Relaxed);
                if let Err(e) = r.finish(exit, &reason, up, down).await {
                    tracing::error!(error = %e.detail(), "could not finish a recording");
                }
            }
            pump_finished.store(true, Ordering::SeqCst);
        });
        Bridge {
            id,
            up,
            replies,
            stats,
            user: bridge_user,
            rec,
            pty: None,
            up_bytes,
            finished,
            tapped,
        }
    }

    /// True once the channel is over (the target's side ended and the
    /// user's channel was closed).
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// Starts the recording of this channel before anything runs on the
    /// target. Fails closed: on Err the caller refuses the request.
    pub async fn begin_recording(
        &mut self,
        recorder: &Recorder,
        meta: RecordingMeta,
    ) -> Result<(), RecordingError> {
        if self.rec.get().is_some() {
            // One recording, one command per channel: the jump refuses a
            // second run request before it gets here; fail closed if one does.
            return Err(RecordingError::Closed);
        }
        let terminal = matches!(
            meta.kind,
            crate::recording::RecordingKind::Shell { .. }
                | crate::recording::RecordingKind::Exec { .. }
        );
        let rec = recorder.start(meta).await?;
        if let Some(l) = self.stats.live() {
            l.set_recording(rec.id());
        }
        let _ = self.rec.set(rec);
        self.tapped.store(terminal, Ordering::SeqCst);
        Ok(())
    }

    /// The pty the user requested, if any: (term, cols, rows).
    pub fn pty(&self) -> Option<(String, u32, u32)> {
        self.pty.clone()
    }

    async fn reply(&mut self, sent: Result<(), russh::Error>) -> bool {
        if sent.is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(REPLY_TIMEOUT, self.replies.recv()).await,
            Ok(Some(true))
        )
    }

    /// User -> target data; waits for the target's window (and, when input
    /// is recorded, for the recorder).
    pub async fn data(&self, data: &[u8]) -> bool {
        // After a limit ended the session nothing more reaches the target,
        // whatever is still queued from the user.
        if self.stats.ending.input_stopped() {
            return false;
        }
        self.stats.add_up(data.len());
        self.up_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let data = Bytes::copy_from_slice(data);
        if let Some(r) = self.rec.get() {
            match r.input(data.clone()).await {
                Ok(()) => {}
                // The channel's recording was finished: the channel is closing.
                Err(RecordingError::Closed) => return false,
                Err(e) => {
                    recording_failed(&self.user, self.id, &self.stats, &e).await;
                    return false;
                }
            }
        }
        if self.stats.ending.input_stopped() {
            return false;
        }
        self.up.data_bytes(data).await.is_ok()
    }

    /// True once the session was ended by gatehouse: nothing more is sent.
    fn stopped(&self) -> bool {
        self.stats.ending.input_stopped()
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn request_pty(
        &mut self,
        term: &str,
        cols: u32,
        rows: u32,
        pw: u32,
        ph: u32,
        modes: &[(Pty, u32)],
    ) -> bool {
        if self.stopped() {
            return false;
        }
        self.pty = Some((term.to_string(), cols, rows));
        let sent = self
            .up
            .request_pty(true, term, cols, rows, pw, ph, modes)
            .await;
        self.reply(sent).await
    }
    pub async fn shell(&mut self) -> bool {
        if self.stopped() {
            return false;
        }
        let sent = self.up.request_shell(true).await;
        self.reply(sent).await
    }
    pub async fn exec(&mut self, command: &[u8]) -> bool {
        if self.stopped() {
            return false;
        }
        let sent = self.up.exec(true, command.to_vec()).await;
        self.reply(sent).await
    }
    pub async fn subsystem(&mut self, name: &str) -> bool {
        if self.stopped() {
            return false;
        }
        let sent = self.up.request_subsystem(true, name).await;
        self.reply(sent).await
    }
    /// Environment variables are sent without asking for a reply (as OpenSSH does).
    pub async fn env(&self, name: &str, value: &str) {
        if self.stopped() {
            return;
        }
        let _ = self.up.set_env(false, name, value).await;
    }
    pub async fn window_change(&self, cols: u32, rows: u32, pw: u32, ph: u32) {
        if self.stopped() {
            return;
        }
        if let Some(r) = self.rec.get() {
            if let Err(e) = r.resize(cols, rows).await {
                recording_failed(&self.user, self.id, &self.stats, &e).await;
                return;
            }
        }
        let _ = self.up.window_change(cols, rows, pw, ph).await;
    }
    pub async fn signal(&self, sig: Sig) {
        if self.stopped() {
            return;
        }
        let _ = self.up.signal(sig).await;
    }
    pub async fn eof(&self) {
        if self.stopped() {
            return;
        }
        let _ = self.up.eof().await;
    }
    pub async fn close(&self) {
        let _ = self.up.close().await;
    }
}

/// Enforces `max_session` and `idle_timeout` on a session: when one is
/// reached, the user is told why on every channel and the session is
/// disconnected. Zero disables a limit.
pub fn spawn_limits(
    stats: Arc<Stats>,
    user: Handle,
    max_session: Duration,
    idle_timeout: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let deadline = (!max_session.is_zero()).then(|| stats.start + max_session);
        // An administrator, a lock or a reload may end the session, and
        // tell the user things (a watcher started) on the way.
        let live = stats.live().cloned();
        let mut notices = live.as_ref().and_then(|l| l.take_notices());
        loop {
            let idle_at = (!idle_timeout.is_zero()).then(|| stats.last_activity() + idle_timeout);
            let next = match (deadline, idle_at) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => Instant::now() + Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                // The session is over: nothing left to limit.
                _ = stats.ending.finished() => return,
                _ = shutdown.changed() => {
                    end(&stats, &user, "gatehouse is shutting down").await;
                    return;
                }
                reason = async {
                    match &live {
                        Some(l) => l.ended().await,
                        None => std::future::pending().await,
                    }
                } => {
                    end(&stats, &user, &reason).await;
                    return;
                }
                Some(text) = async {
                    match notices.as_mut() {
                        Some(n) => n.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    notice(&stats, &user, &text).await;
                    continue;
                }
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                let msg = format!(
                    "session reached its maximum length ({})",
                    humantime::format_duration(max_session)
                );
                end(&stats, &user, &msg).await;
                return;
            }
            if !idle_timeout.is_zero() && now >= stats.last_activity() + idle_timeout {
                let msg = format!(
                    "session idle for {}",
                    humantime::format_duration(idle_timeout)
                );
                end(&stats, &user, &msg).await;
                return;
            }
        }
    });
}

/// Tells the user something on every channel of the session (stderr),
/// best-effort: a client that does not read does not hold the limits up.
async fn notice(stats: &Stats, user: &Handle, text: &str) {
    let text = format!("\r\ngatehouse: {text}\r\n");
    let send = async {
        for id in stats.channels() {
            let _ = user
                .extended_data(id, 1, Bytes::from(text.clone().into_bytes()))
                .await;
        }
    };
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, send).await;
}

async fn end(stats: &Stats, user: &Handle, reason: &str) {
    stats.set_end_reason(reason);
    // The decision holds from here on: nothing more the user sends is
    // forwarded, whatever happens to the message below.
    stats.ending.stop_input();
    tracing::info!(reason, "ending a session");
    let text = format!("\r\ngatehouse: {reason}; closing.\r\n");
    let polite = async {
        for id in stats.channels() {
            let _ = user
                .extended_data(id, 1, Bytes::from(text.clone().into_bytes()))
                .await;
            let _ = user.eof(id).await;
            let _ = user.close(id).await;
        }
        let _ = user
            .disconnect(
                russh::Disconnect::ByApplication,
                format!("gatehouse: {reason}"),
                "en".into(),
            )
            .await;
        // A client that reads gets the message and hangs up by itself.
        stats.ending.finished().await;
    };
    // Best-effort only: these wait in the same queue as output the client
    // may never read.
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, polite).await;
    // Cut the target connection and (for a jump) the user's stream.
    stats.ending.kill();
}

/// Emits `session.end` when dropped, whatever ended the session.
pub struct SessionGuard {
    pub id: String,
    pub user: String,
    pub login: String,
    pub target: String,
    pub stats: Arc<Stats>,
    /// Keeps the session listed in `gatehouse sessions` until it ends.
    pub registration: Option<Registration>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.stats.ending.set_finished();

        audit::session_end(
            &self.id,
            &self.user,
            &self.login,
            &self.target,
            &self.stats.summary(),
        );
    }
}

/// A random session id (hex, 16 bytes).
pub fn new_session_id() -> String {
    let mut b = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    hex::encode(b)
}
