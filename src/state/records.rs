//! Persisted lockout records (failure timestamps and lock expiry per user and
//! per source, in wall-clock seconds so they survive a restart), and the
//! background writer that puts them on disk.
//!
//! The writer is a thread of its own: no async worker ever waits for the
//! disk, and nobody holds a lock that logins need while a file is written.
//! Changes are coalesced: the file is written at most once per
//! `min_interval`, except that an urgent change (a lock that just started)
//! is written at once, so that locks survive a crash or restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{write_secret_file, StateError};

/// Failures and lock state of one user or one source.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Unix seconds of recent failures (pruned to the failure window).
    pub failures: Vec<u64>,
    /// Unix seconds until which logins are refused.
    pub locked_until: Option<u64>,
}

/// All lockout records as stored, keyed `user:NAME` or `source:ADDR`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LockoutRecords {
    pub records: HashMap<String, Record>,
}

impl LockoutRecords {
    /// Loads the records (an absent file is empty; a corrupt one is an error
    /// rather than silently forgetting lockouts).
    pub fn load(path: &Path) -> Result<LockoutRecords, StateError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice::<LockoutRecords>(&bytes).map_err(|e| StateError::Corrupt {
                    path: path.to_path_buf(),
                    message: format!("unreadable lockout records ({e})"),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LockoutRecords::default()),
            Err(e) => Err(StateError::io(path, e)),
        }
    }

    /// The file's contents.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A map of strings to plain data always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Produces the bytes to write and the generation they reflect; `None` when
/// there is nothing to write any more.
pub type Snapshot = Box<dyn Fn() -> Option<(u64, Vec<u8>)> + Send>;

#[derive(Debug, Default)]
struct WriterState {
    /// The newest generation that should be on disk.
    wanted: u64,
    /// The newest generation that is on disk (or whose write failed and was
    /// logged; the next change retries).
    written: u64,
    urgent: bool,
    stop: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<WriterState>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A file kept up to date by a background thread, written atomically and
/// durably, at most once per interval unless a change is urgent.
#[derive(Debug)]
pub struct CoalescingWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl CoalescingWriter {
    /// Starts the writer thread for `path`. `snapshot` is called on that
    /// thread, never on the caller's.
    pub fn spawn(
        path: PathBuf,
        min_interval: Duration,
        snapshot: Snapshot,
    ) -> Result<CoalescingWriter, StateError> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let p = path.clone();
        let thread = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || write_loop(&s, &p, min_interval, &*snapshot))
            .map_err(|e| StateError::io(&path, e))?;
        Ok(CoalescingWriter {
            shared,
            thread: Some(thread),
        })
    }

    /// Says that `generation` should reach the disk: within the interval,
    /// or at once when `urgent`. Never blocks on the disk.
    pub fn changed(&self, generation: u64, urgent: bool) {
        let mut st = self.shared.lock();
        st.wanted = st.wanted.max(generation);
        st.urgent |= urgent;
        drop(st);
        self.shared.cv.notify_all();
    }

    /// Waits (blocking) until `generation` is written or `timeout` passes;
    /// true when written. Call only from a thread that may block.
    pub fn wait_written(&self, generation: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while st.written < generation {
            let now = Instant::now();
            if now >= deadline || st.stop {
                return false;
            }
            st = match self.shared.cv.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }
}

impl Drop for CoalescingWriter {
    /// Writes what is pending, then ends the thread.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(
    shared: &Shared,
    path: &Path,
    min_interval: Duration,
    snapshot: &dyn Fn() -> Option<(u64, Vec<u8>)>,
) {
    let mut last_write: Option<Instant> = None;
    loop {
        let mut st = shared.lock();
        // Wait until something is due.
        loop {
            if st.wanted > st.written {
                let due = last_write.map(|t| t + min_interval);
                let now = Instant::now();
                match due {
                    _ if st.urgent || st.stop => break,
                    None => break,
                    Some(d) if now >= d => break,
                    Some(d) => {
                        st = match shared.cv.wait_timeout(st, d - now) {
                            Ok((g, _)) => g,
                            Err(e) => e.into_inner().0,
                        };
                        continue;
                    }
                }
            }
            if st.stop {
                return;
            }
            st = match shared.cv.wait(st) {
                Ok(g) => g,
                Err(e) => e.into_inner(),
            };
        }
        st.urgent = false;
        let wanted = st.wanted;
        drop(st);
        let generation = match snapshot() {
            Some((generation, bytes)) => {
                if let Err(e) = write_secret_file(path, &bytes) {
                    tracing::error!(error = %e, "cannot persist state file");
                }
                last_write = Some(Instant::now());
                generation
            }
            None => wanted,
        };
        let mut st = shared.lock();
        st.written = st.written.max(generation).max(wanted);
        drop(st);
        shared.cv.notify_all();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn changes_are_coalesced_and_urgent_ones_written_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f.json");
        let gen = Arc::new(AtomicU64::new(0));
        let writes = Arc::new(AtomicU64::new(0));
        let (g, w) = (gen.clone(), writes.clone());
        let writer = CoalescingWriter::spawn(
            path.clone(),
            Duration::from_secs(3600),
            Box::new(move || {
                w.fetch_add(1, Ordering::SeqCst);
                let n = g.load(Ordering::SeqCst);
                Some((n, n.to_string().into_bytes()))
            }),
        )
        .unwrap();
        // The first change is written at once (nothing was written before).
        gen.store(1, Ordering::SeqCst);
        writer.changed(1, false);
        assert!(writer.wait_written(1, Duration::from_secs(5)));
        // Within the interval, ordinary changes wait ...
        for n in 2..200 {
            gen.store(n, Ordering::SeqCst);
            writer.changed(n, false);
        }
        assert!(!writer.wait_written(199, Duration::from_millis(300)));
        assert_eq!(writes.load(Ordering::SeqCst), 1);
        // ... and an urgent one takes all of them along, in one write.
        gen.store(200, Ordering::SeqCst);
        writer.changed(200, true);
        assert!(writer.wait_written(200, Duration::from_secs(5)));
        assert_eq!(writes.load(Ordering::SeqCst), 2);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "200");
        // Dropping the writer writes what is pending.
        gen.store(201, Ordering::SeqCst);
        writer.changed(201, false);
        drop(writer);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "201");
    }
}
