//! Live sessions: what `gatehouse sessions` lists, what `sessions kill`,
//! locks and reloads end, what `sessions watch` taps.
//!
//! Every relayed session (SSH login to a target, PostgreSQL, MySQL)
//! registers here when it starts and is removed when its [`Registration`]
//! drops, whatever ended it. The registry holds no session state of its own
//! beyond counters and switches: ending a session is a request
//! ([`Live::end`]) that the session's own limit task acts on, so the same
//! code path (message to the user, input stopped, streams cut within a
//! second) serves limits, shutdown, kills, locks and reloads.
//!
//! The live tap for watchers is a bounded broadcast: a watcher that falls
//! behind loses output (and is told), the session never waits for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};

/// Output chunks a watcher may fall behind before it loses some.
const TAP_CAPACITY: usize = 1024;
/// Notices (e.g. "an administrator is watching") waiting for the session.
const NOTICE_CAPACITY: usize = 16;

/// What kind of session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    Ssh,
    Postgres,
    Mysql,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Ssh => "ssh",
            SessionKind::Postgres => "postgres",
            SessionKind::Mysql => "mysql",
        }
    }
}

/// Who, from where, to what: fixed when the session starts.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The session id (the one in `session.start`/`session.end` and the
    /// recording's name).
    pub id: String,
    pub kind: SessionKind,
    pub user: String,
    /// The address the user came from (for a tunnelled connection, the
    /// device's tunnel address).
    pub source: String,
    /// The WireGuard device's public key (base64), for tunnelled sessions.
    pub device: Option<String>,
    /// The SHA256 fingerprint of the SSH key that admitted the user, when
    /// a key did (SSH logins; database sessions behind `ssh -L`).
    pub key_fingerprint: Option<String>,
    pub target: String,
    pub login: String,
    /// Whether any granting role says `announce_watch = true`.
    pub announce_watch: bool,
}

/// One live session.
#[derive(Debug)]
pub struct Live {
    pub info: SessionInfo,
    started: SystemTime,
    start: Instant,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    last_activity_ms: AtomicU64,
    recording: Mutex<Option<String>>,
    end: watch::Sender<Option<String>>,
    tap: broadcast::Sender<Bytes>,
    notices_tx: mpsc::Sender<String>,
    notices_rx: Mutex<Option<mpsc::Receiver<String>>>,
    watchers: AtomicUsize,
    /// Set when the registration drops: the session is over.
    gone: watch::Sender<bool>,
}

impl Live {
    /// Bytes from the user towards the target.
    pub fn add_up(&self, n: usize) {
        self.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
        crate::metrics::bytes_up(n as u64);
        self.touch();
    }
    /// Bytes from the target towards the user.
    pub fn add_down(&self, n: usize) {
        self.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
        crate::metrics::bytes_down(n as u64);
        self.touch();
    }
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }
    pub fn bytes_up(&self) -> u64 {
        self.bytes_up.load(Ordering::Relaxed)
    }
    pub fn bytes_down(&self) -> u64 {
        self.bytes_down.load(Ordering::Relaxed)
    }
    /// Names the session's recording (once it exists).
    pub fn set_recording(&self, id: &str) {
        if let Ok(mut r) = self.recording.lock() {
            *r = Some(id.to_string());
        }
    }

    /// Asks the session to end, with the reason the user is shown. The
    /// first reason wins; returns false if an end was already requested.
    pub fn end(&self, reason: &str) -> bool {
        let mut first = false;
        self.end.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason.to_string());
                first = true;
            }
            first
        });
        first
    }
    /// Resolves with the reason once [`Live::end`] was called. For the
    /// session's limit task.
    pub async fn ended(&self) -> String {
        let mut rx = self.end.subscribe();
        let reason = match rx.wait_for(|r| r.is_some()).await {
            Ok(r) => r.clone().unwrap_or_default(),
            // Unreachable while `self` lives (it holds the sender).
            Err(_) => String::new(),
        };
        reason
    }
    /// The end reason, if one was requested.
    pub fn end_requested(&self) -> Option<String> {
        self.end.borrow().clone()
    }

    /// Terminal output of the session (what the user sees), for watchers.
    /// Never waits: without a watcher it is dropped at once.
    pub fn tap(&self, data: &[u8]) {
        if self.tap.receiver_count() > 0 {
            let _ = self.tap.send(Bytes::copy_from_slice(data));
        }
    }
    /// A live copy of the terminal output from now on.
    pub fn watch(self: &Arc<Self>) -> Watcher {
        self.watchers.fetch_add(1, Ordering::SeqCst);
        Watcher {
            rx: self.tap.subscribe(),
            gone: self.gone.subscribe(),
            live: self.clone(),
        }
    }
    /// How many watchers are attached.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::SeqCst)
    }

    /// Queues a line for the user's terminal (best effort: dropped when the
    /// queue is full).
    pub fn notify(&self, text: &str) {
        let _ = self.notices_tx.try_send(text.to_string());
    }
    /// The notices queue, for the session task that writes them to the
    /// user (taken once).
    pub fn take_notices(&self) -> Option<mpsc::Receiver<String>> {
        self.notices_rx.lock().ok().and_then(|mut r| r.take())
    }

    /// A point-in-time view for listings.
    pub fn snapshot(&self) -> Snapshot {
        let now = self.start.elapsed().as_millis() as u64;
        let idle_ms = now.saturating_sub(self.last_activity_ms.load(Ordering::Relaxed));
        Snapshot {
            id: self.info.id.clone(),
            kind: self.info.kind,
            user: self.info.user.clone(),
            source: self.info.source.clone(),
            device: self.info.device.clone(),
            target: self.info.target.clone(),
            login: self.info.login.clone(),
            started: self
                .started
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            duration_s: now / 1000,
            idle_s: idle_ms / 1000,
            bytes_up: self.bytes_up(),
            bytes_down: self.bytes_down(),
            recording: self.recording.lock().ok().and_then(|r| r.clone()),
            watchers: self.watchers(),
        }
    }
}

/// A watcher's view of one session's output.
pub struct Watcher {
    rx: broadcast::Receiver<Bytes>,
    gone: watch::Receiver<bool>,
    live: Arc<Live>,
}

/// What a watcher receives next.
pub enum Watched {
    Output(Bytes),
    /// The watcher fell behind and lost this many chunks.
    Lost(u64),
    /// The session ended.
    Ended,
}

impl Watcher {
    pub async fn next(&mut self) -> Watched {
        // Output already sent is delivered before the end.
        match self.rx.try_recv() {
            Ok(b) => return Watched::Output(b),
            Err(broadcast::error::TryRecvError::Lagged(n)) => return Watched::Lost(n),
            Err(broadcast::error::TryRecvError::Closed) => return Watched::Ended,
            Err(broadcast::error::TryRecvError::Empty) => {}
        }
        tokio::select! {
            r = self.rx.recv() => match r {
                Ok(b) => Watched::Output(b),
                Err(broadcast::error::RecvError::Lagged(n)) => Watched::Lost(n),
                Err(broadcast::error::RecvError::Closed) => Watched::Ended,
            },
            _ = self.gone.wait_for(|g| *g) => Watched::Ended,
        }
    }
    pub fn session(&self) -> &Arc<Live> {
        &self.live
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.live.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One row of `gatehouse sessions` (also its `--json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub id: String,
    pub kind: SessionKind,
    pub user: String,
    pub source: String,
    pub device: Option<String>,
    pub target: String,
    pub login: String,
    /// Unix seconds.
    pub started: u64,
    pub duration_s: u64,
    pub idle_s: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub recording: Option<String>,
    pub watchers: usize,
}

/// Session starts a subscriber may fall behind before it loses some.
const STARTS_CAPACITY: usize = 1024;

/// Decides, once a session is listed, whether it must end at once (a lock
/// set while it was being admitted): the reason, or `None`.
pub type Gate = Arc<dyn Fn(&SessionInfo) -> Option<String> + Send + Sync>;

/// Every live session of the process.
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<Live>>>,
    starts: broadcast::Sender<Arc<Live>>,
    gate: Mutex<Option<Gate>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("sessions", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            sessions: Mutex::default(),
            starts: broadcast::channel(STARTS_CAPACITY).0,
            gate: Mutex::new(None),
        }
    }
}

/// Keeps a session listed; dropping it removes the session (and ends the
/// watchers' taps).
#[derive(Debug)]
pub struct Registration {
    live: Arc<Live>,
    registry: Weak<Registry>,
}

impl Registration {
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }
}

impl std::ops::Deref for Registration {
    type Target = Live;
    fn deref(&self) -> &Live {
        &self.live
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.live.gone.send_replace(true);
        if let Some(r) = self.registry.upgrade() {
            if let Ok(mut s) = r.sessions.lock() {
                s.remove(&self.live.info.id);
            }
        }
    }
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// Lists a new session until the returned registration drops.
    pub fn register(self: &Arc<Self>, info: SessionInfo) -> Registration {
        let (notices_tx, notices_rx) = mpsc::channel(NOTICE_CAPACITY);
        let live = Arc::new(Live {
            info,
            started: SystemTime::now(),
            start: Instant::now(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            recording: Mutex::new(None),
            end: watch::channel(None).0,
            tap: broadcast::channel(TAP_CAPACITY).0,
            notices_tx,
            notices_rx: Mutex::new(Some(notices_rx)),
            watchers: AtomicUsize::new(0),
            gone: watch::channel(false).0,
        });
        if let Ok(mut s) = self.sessions.lock() {
            s.insert(live.info.id.clone(), live.clone());
        }
        // A session is admitted (locks checked) well before it is listed
        // here: the TOTP code, the upstream login. A lock set in between
        // found nothing to end; so look again now that it is listed. Whoever
        // comes second (the lock's `end_matching` or this check) sees the
        // other, so no session slips between them.
        let gate = self.gate.lock().ok().and_then(|g| g.clone());
        if let Some(reason) = gate.and_then(|g| g(&live.info)) {
            live.end(&reason);
        }
        if self.starts.receiver_count() > 0 {
            let _ = self.starts.send(live.clone());
        }
        Registration {
            live,
            registry: Arc::downgrade(self),
        }
    }

    /// Sets the check every newly listed session passes (see [`Gate`]).
    pub fn set_gate(&self, gate: Gate) {
        if let Ok(mut g) = self.gate.lock() {
            *g = Some(gate);
        }
    }

    /// Every session that starts from now on (for observers such as the
    /// anomaly rules; lossy if the observer falls behind by
    /// 1024 sessions, never blocking a session).
    pub fn starts(&self) -> broadcast::Receiver<Arc<Live>> {
        self.starts.subscribe()
    }

    /// Every live session, oldest first.
    pub fn list(&self) -> Vec<Snapshot> {
        let mut v: Vec<Snapshot> = self.all().iter().map(|l| l.snapshot()).collect();
        v.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
        v
    }

    /// Every live session's handle.
    pub fn all(&self) -> Vec<Arc<Live>> {
        self.sessions
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Live>> {
        self.sessions.lock().ok().and_then(|s| s.get(id).cloned())
    }

    /// Asks every session matching `pred` to end with `reason`; returns
    /// their ids.
    pub fn end_matching(&self, pred: impl Fn(&SessionInfo) -> bool, reason: &str) -> Vec<String> {
        let mut ended = Vec::new();
        for l in self.all() {
            if pred(&l.info) {
                l.end(reason);
                ended.push(l.info.id.clone());
            }
        }
        ended
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn info(id: &str, user: &str) -> SessionInfo {
        SessionInfo {
            id: id.into(),
            kind: SessionKind::Ssh,
            user: user.into(),
            source: "127.0.0.1".into(),
            device: None,
            key_fingerprint: None,
            target: "web-1".into(),
            login: "deploy".into(),
            announce_watch: false,
        }
    }

    #[test]
    fn a_dropped_registration_is_no_longer_listed() {
        let r = Registry::new();
        let a = r.register(info("a", "alice"));
        let _b = r.register(info("b", "bob"));
        assert_eq!(r.len(), 2);
        drop(a);
        let ids: Vec<String> = r.list().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, vec!["b".to_string()]);
    }

    #[tokio::test]
    async fn end_matching_ends_only_the_matching_sessions_and_the_first_reason_wins() {
        let r = Registry::new();
        let a = r.register(info("a", "alice"));
        let b = r.register(info("b", "bob"));
        let ended = r.end_matching(|i| i.user == "alice", "locked");
        assert_eq!(ended, vec!["a".to_string()]);
        assert!(!a.end("second"));
        assert_eq!(a.ended().await, "locked");
        assert_eq!(b.end_requested(), None);
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_loses_output_and_never_blocks_the_session() {
        let r = Registry::new();
        let a = r.register(info("a", "alice"));
        let mut w = a.live().watch();
        for i in 0..(TAP_CAPACITY + 10) {
            a.tap(format!("{i}").as_bytes());
        }
        assert!(matches!(w.next().await, Watched::Lost(n) if n >= 10));
        assert_eq!(a.watchers(), 1);
        drop(w);
        assert_eq!(a.watchers(), 0);
        let mut w = a.live().watch();
        a.tap(b"last words");
        drop(a);
        assert!(matches!(w.next().await, Watched::Output(b) if &b[..] == b"last words"));
        assert!(matches!(w.next().await, Watched::Ended));
    }
}
